//! The node API server (in progress).
