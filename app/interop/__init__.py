"""Datasets in and out: COCO / YOLO / Label Studio / results imports, format conversion, COCO and YouTube-VIS export, QA."""
