// The risk kernels. Not written yet.
