"""Side-by-side speed benchmarks of CondInst and torchvision Mask R-CNN (see bench/README.md)."""
