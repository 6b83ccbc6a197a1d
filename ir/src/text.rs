//! Textual form of the IR (printer and parser). Filled in below.
