//! TODO: stage 'replay' (being written).
