//! TODO: stage 'shards' (being written).
