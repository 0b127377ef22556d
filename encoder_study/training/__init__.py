"""How runs are trained: the batched engine (``engine``) and the plain one-run loop it is tested
against (``single_run``), the run cache (``run_cache``), where groups train (``executors``: this
process or a Ray cluster), the notebooks' entry point (``runs``), CUDA graphs for the GPU step
(``cuda_graphs``) and the CPU arithmetic settings training depends on (``cpu``)."""
