// The patterns kernels. Not written yet.
