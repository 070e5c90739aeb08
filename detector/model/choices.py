"""Names the model's constructors accept, importable without torch (the configuration checks its
options against them before anything heavy loads)."""

# RoIHeads(roi_align_kernel=...): the separable kernel (model/roi_align.py), torchvision's, or the
# separable one while its intermediate stays small.
ROI_ALIGN_KERNELS = ("auto", "separable", "torchvision")
