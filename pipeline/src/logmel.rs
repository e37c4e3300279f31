//! TODO: stage 'logmel' (being written).
