"""SipMask (Cao et al., ECCV 2020) beside CondInst: pure PyTorch, official mmdetection v1 checkpoints.

    images -> ResNet + FPN (shared with CondInst) -> SipMaskHead (head.py) -> candidates
      -> Fast NMS (real-time models) or class-wise +1 NMS with centerness factors (postprocess.py)
      -> 4 coefficient sets x 32 basis masks -> quadrant crop-split (crop_split.py) -> masks > 0.4
"""
