//! The `monte_carlo` kind's contract (parameters, bounds, memory estimate, result).
//! Not written yet.
