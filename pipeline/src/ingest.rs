//! TODO: stage 'ingest' (being written).
