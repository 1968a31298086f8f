"""Settings of the identity fit (:func:`expportrait_core.fit.fit_identity`).

Every weight, schedule and tolerance of the staged optimization lives here, with its default and
the reason for it. Units: landmark residuals are divided by the face size (the diagonal of the
landmarks' bounding box, in pixels), so weights do not depend on the image resolution; offsets
are in metres; normals are unit vectors; depth residuals are in units of the target depth's spread
on the person (after scale/shift alignment).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Tuple

QUALITY_PRESETS = ("fast", "balanced", "best")


@dataclass
class FitConfig:
    """Staged identity fit: init → rigid → shape/expression → dense (static offsets).

    Camera (conventions shared with tracking): rotation fixed to ``framing.FRONT_R`` (an OpenCV
    camera in front of the face), focal length from ``fov_y_deg`` (optionally refined), placed on
    the optical axis through the rest-pose head at the distance that matches the detected face
    size; the bust's ``transl`` then absorbs the remaining offset. The rigid head rotation is split
    evenly between ``neck_pose`` and ``head_pose``; ``global_orient`` (body turn) is only freed in the
    dense stage when a mask, normal or depth map shows the shoulders.
    """

    # --- camera -------------------------------------------------------------------------------
    fov_y_deg: float = 14.0
    """Vertical field of view (degrees). 14° ≈ an 85–100 mm portrait lens on full frame."""
    optimize_focal: bool = False
    """Refine the focal length in the landmark stages (weakly constrained by landmarks alone;
    the prior ``w_focal_prior`` keeps it near ``fov_y_deg``)."""
    w_focal_prior: float = 10.0

    # --- initialization -----------------------------------------------------------------------
    yaw_hypotheses_deg: Tuple[float, ...] = (-35.0, 0.0, 35.0)
    """Initial head yaws tried by the init (with a perspective-n-point solution of the inner
    landmarks as one more hypothesis; all refined for ``init_iters`` steps, the best wins)."""
    init_iters: int = 25

    # --- stage iterations and learning rates (Adam) -------------------------------------------
    rigid_iters: int = 60
    rigid_lr: float = 0.01
    shape_iters: int = 150
    shape_lr: float = 0.05
    dense_iters: int = 150
    dense_shape_lr: float = 0.1
    """Adam's step bounds how far a coefficient can move per iteration: betas of ±1.5 need ≥ 0.05."""
    dense_expression_lr: float = 0.05
    dense_pose_lr: float = 0.003
    """Radians per step for head/jaw/eye/body rotations (translation: 5% of it, in metres)."""
    offset_lr: float = 0.01
    """Learning rate of the static-offset variables (metres of the preconditioned parameter)."""
    depth_lr_scale: float = 1.0
    """In the shape, dense and landmark-offset stages the translation's depth component (world z ≈
    the optical axis) steps ``depth_lr_scale · distance / face radius`` times faster than its
    sideways components (= focal length / landmark spread in px: ≈ 42 on the synthetic test, 37 on
    the insightface sample at 14°, 9 at 55°): a millimetre of depth moves the landmarks that much
    less than a millimetre sideways, so with equal Adam steps the camera distance barely moved (8 cm
    short on the synthetic test) and the betas shrank the face to compensate. 0 = equal steps."""
    lr_final: float = 0.1
    """Every stage's learning rates decay along a cosine to this fraction of their initial value."""
    early_stop_tol: float = 1e-5
    """Stop a stage when the loss improved by less than this (relative) over ``early_stop_window``."""
    early_stop_window: int = 25
    early_stop_min_fraction: float = 0.5
    """No early stop before this fraction of a stage's iterations: while the learning rate is
    still high the loss is noisy, and a stop there froze the dense stage at a random point of
    its schedule (e.g. after 70–100 of 150 steps, depending on tiny changes)."""

    # --- landmark term ------------------------------------------------------------------------
    w_landmarks: float = 1.0
    landmark_sigma: float = 0.006
    """Expected landmark noise as a fraction of the face size (0.006 ≈ 1.5 px on a 250 px face):
    residuals are measured in these units, so the landmark term ≈ the mean squared z-score and
    the priors below are relative to it."""
    robust_scale: float = 3.0
    """Scale of the robust (Cauchy) loss in units of ``landmark_sigma``: residuals well below it are
    quadratic, outliers (a mis-detected contour point) grow only logarithmically."""
    contour_weight: float = 0.5
    """Extra factor on the 17 jaw-contour landmarks (their position along the contour is ambiguous)."""

    # --- priors (Gaussian; relative to the mean landmark z-score², i.e. 1/68 ≈ one landmark) -----
    num_fit_betas: int = 100
    """Shape coefficients optimized (the rest stay 0); the prior keeps the unconstrained ones small."""
    num_fit_expression: int = 100
    w_betas: float = 0.015
    w_expression: float = 0.1
    """The expression prior is strong (0.1 vs 0.015 for betas): in one photo a local expression
    direction (cheek puff, brow raise) could explain the person's own geometry, which belongs in
    the betas and static offsets (the reference should be near-neutral). A weaker prior (0.02)
    fits real landmarks closer (4.3% vs 5.3% of the inter-ocular distance on the insightface
    sample) but lets expression absorb identity detail in the dense stage."""
    w_betas_dense: float = 0.015
    w_expression_dense: float = 1.0
    """Priors in the dense stage. The expression prior is 10× the landmark stages': against
    normal/depth maps the local expression directions (cheek puff, random local deformations) are a
    cheap way to explain the person's own geometry, which belongs in the betas and static offsets.
    With 0.1 the fit's expression drifted far from the truth on the synthetic test (error norm 0.8
    even when started at the true one) and took part of the true static offsets with it."""
    w_jaw: float = 0.3
    """Jaw prior (radians²); sideways/twist and closing past rest are penalized 10×/100× more."""
    w_eyes: float = 0.3
    w_body_turn: float = 1.0
    """Prior on ``global_orient`` (body turn) relative to zero, radians²."""

    # --- dense stage (static offsets on the upsampled bust) -----------------------------------
    fit_static_offsets: bool = True
    dense_resolution: int = 192
    """Longer side (px) of the dense-term renders (normals/depth/silhouette) of the head window."""
    dense_crop: float = 2.4
    """Side of the dense-render window around the head, in units of the landmarks' box (2.4 keeps
    hair, ears and neck; 0 = the whole image)."""
    w_normal: float = 60.0
    normal_robust: float = 0.0
    """0: plain L1 of the normal difference per pixel; > 0: c·log(1 + e/c), so pixels off by much
    more than c (creases, silhouettes, estimator failures) stop dominating."""
    w_depth: float = 60.0
    w_silhouette: float = 0.1
    w_dense_landmarks: float = 1.0
    dense_lr_warmup: float = 0.2
    """Fraction of the dense iterations over which the learning rates ramp up linearly from 0.
    Adam's first steps move every coefficient by ±lr at once (100 betas by 0.1 each: a jump of
    norm 1): without the ramp the dense losses first rose (normals 8 → 10.5 on the synthetic test)
    and where the fit settled depended on that jump, i.e. on tiny changes anywhere."""
    dense_rigid_warmup: float = 0.0
    """Fraction of the dense iterations that first refine only the head pose, translation and body
    turn against the dense terms (at ``dense_rigid_lr``)."""
    dense_rigid_lr: float = 0.01
    offset_warmup: float = 0.0
    """Fraction of the dense iterations (including the rigid warm-up) with the offsets frozen:
    the smooth offsets would otherwise absorb the still-wrong global shape first."""
    offset_mode: str = "normal"
    """``normal``: the offsets are a height along the neutral mesh's normals (a displacement map; a
    monocular image observes only that component, sliding along the surface is invisible);
    ``xyz``: free 3-D offsets (the paper's most general form; tangential parts are left to the
    regularizers)."""
    offset_space: str = "base"
    """``base``: offsets live on the bust's base vertices and are interpolated to the upsampled
    mesh by the proxy's upsampler; the dense model is evaluated on those vertices and upsampled
    after skinning (renders at ≤256² cannot resolve finer detail; 4× fewer vertices on the
    synthetic head, ~15× on SMPL-X). ``full``: one free offset per upsampled vertex and the full
    upsampled model (slower, for high-resolution targets)."""
    offset_smoothing: float = 30.0
    """λ of the "large steps" preconditioner x = (I + λL)⁻¹u (Nicolet et al. 2021): gradient steps
    on u move smooth patches of vertices instead of single vertices. 0 disables it."""
    w_offset_laplacian: float = 30.0
    """Laplacian smoothness of the offsets (mean ‖LΔ‖² in mm², uniform L = I - D⁻¹A) on the mesh
    they live on (the bust's base mesh for ``offset_space='base'``, else the upsampled mesh)."""
    w_offset_magnitude: float = 0.005
    """Magnitude prior outside the face (mean ‖Δ‖² in mm²)."""
    w_offset_magnitude_face: float = 0.005
    """Magnitude prior inside the face mask. Equal to the outside by default: the former 0.05 (0.02
    outside) shrank the recovered offsets to ~60% of the truth and pushed the rest into
    betas/expression, which then bent the surrounding surface (static-offset cosine ~0.04 lower on
    the synthetic test); the Laplacian and the smoothing preconditioner keep the field smooth."""
    max_offset: float = 0.05
    """Offsets are clamped to this length (metres) as a NaN/runaway guard."""

    # --- static offsets from landmarks alone (no normal/depth/mask) ---------------------------
    landmark_offsets: bool = True
    """Without normal/depth/mask inputs, fit the static offsets to the landmarks (a smooth 3-D
    deformation on the bust's base mesh): the shape space alone leaves a real face's jaw contour
    and brows several pixels off. False: no offsets without dense targets (the older behaviour)."""
    landmark_offset_iters: int = 100
    landmark_offset_lr: float = 0.05
    landmark_offset_smoothing: float = 30.0
    """λ of the large-steps preconditioner of this stage (see ``offset_smoothing``)."""
    w_landmark_offset_laplacian: float = 100.0
    w_landmark_offset_magnitude: float = 0.02
    """Regularizers of this stage, as ``w_offset_laplacian`` / ``w_offset_magnitude`` (mm²)."""

    # --- output / runtime ---------------------------------------------------------------------
    preview_alpha: float = 0.6
    seed: int = 0
    num_threads: int = 1
    """torch CPU threads during the fit (restored afterwards); 0 keeps the current setting; ignored
    on CUDA. The fit runs many small ops plus a scipy sparse solve: on this project's 2-core CPU
    one thread took 10–16 s for a 512² identity with dense terms and two threads 194 s (threads
    spinning against each other and the BLAS pool; bench/RESULTS.md)."""

    def scaled(self, iterations_scale: float) -> "FitConfig":
        """A copy with every stage's iteration count multiplied by ``iterations_scale``."""
        s = max(0.05, float(iterations_scale))
        r = lambda n: max(1, int(round(n * s)))  # noqa: E731
        return replace(self, init_iters=r(self.init_iters), rigid_iters=r(self.rigid_iters),
                       shape_iters=r(self.shape_iters), dense_iters=r(self.dense_iters),
                       landmark_offset_iters=r(self.landmark_offset_iters))

    @classmethod
    def preset(cls, quality: str = "balanced", **overrides) -> "FitConfig":
        """``fast`` (about half the iterations, the init's excepted; 128² dense renders), ``balanced`` (the defaults),
        ``best`` (1.5× the iterations, 256² dense renders)."""
        if quality not in QUALITY_PRESETS:
            from ..errors import ExpPortraitError

            raise ExpPortraitError(f"quality must be one of {QUALITY_PRESETS}, got {quality!r}.")
        cfg = cls(**overrides)
        if quality == "fast":
            # the init keeps its iterations (~0.2 s): with half of them the pose hypotheses of the
            # insightface sample had not separated and the fit kept a wrong yaw (jaw 22% of the IOD off)
            cfg = replace(cfg.scaled(0.5), init_iters=cfg.init_iters, dense_resolution=min(cfg.dense_resolution, 128))
        elif quality == "best":
            cfg = replace(cfg.scaled(1.5), dense_resolution=max(cfg.dense_resolution, 256))
        return cfg
