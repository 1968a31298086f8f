"""ExpPortrait core library: the method of arXiv 2602.19900 as plain Python (never imports ComfyUI).

Sub-packages: ``head`` (SMPL-X head proxy with dense displacement), ``render`` (differentiable
normal-map rendering), ``face`` (detection, landmarks, identity embedding), ``fit`` (identity
fitting), ``track`` (driving-video tracking), ``transfer`` (identity-adaptive expression transfer),
``generator`` (normal-map-controlled video DiT), ``io`` (files and video), ``eval`` (metrics).
"""
__version__ = "0.1.0"
