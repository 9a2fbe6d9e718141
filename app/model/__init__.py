"""The model session: one loaded CondInst / SipMask model, its predictions and explanations, shared by every part."""
