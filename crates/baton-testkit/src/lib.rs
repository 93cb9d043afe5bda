//! Baton test kit.
