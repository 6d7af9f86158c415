// The monte_carlo kernels. Not written yet.
