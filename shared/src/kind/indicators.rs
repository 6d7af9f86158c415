//! The `indicators` kind's contract (parameters, bounds, memory estimate, result).
//! Not written yet.
