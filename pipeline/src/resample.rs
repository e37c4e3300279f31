//! TODO: stage 'resample' (being written).
