// The portfolio_opt kernels. Not written yet.
