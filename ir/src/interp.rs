//! Reference interpreter. Filled in below.
