"""Experiments on top of the engine: the losses x seeds x noise comparison matrix, reports
(a pure function of run directories), figures and benchmarks against torchvision."""
