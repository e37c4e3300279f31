//! TODO: stage 'dir' (being written).
