//! TODO: stage 'teacher' (being written).
