// The indicators kernels. Not written yet.
