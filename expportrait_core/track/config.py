"""Settings of driving-video tracking (:func:`expportrait_core.track.track_video`).

Units. Landmark residuals are divided by ``landmark_sigma`` times the clip's face size (the
median diagonal of the detected landmark box over the keyframes), so every weight below is
independent of the video resolution and of how large the face appears. Rotations are axis-angle
radians, translations metres, expression coefficients SMPL-X units. Temporal weights multiply
squared frame-to-frame differences (velocity) and squared second differences (acceleration) of
those parameters, in the same units as the data term (a perfectly fitted frame whose landmarks
carry noise of ``landmark_sigma`` has a data cost of about 2 per landmark).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ExpPortraitError

TRACK_MODES = ("fast", "detail")
SMOOTHING_MODES = ("offline", "causal", "none")


@dataclass
class TrackConfig:
    """Driving-video tracking: per-clip identity, per-frame landmark solve, temporal smoothing,
    optional dynamic-offset detail.

    Conventions (shared with identity fitting): the camera keeps the frontal rotation
    ``framing.FRONT_R`` and the driving identity's focal length and translation for the whole clip;
    the bust's ``global_orient`` (body turn) comes from the identity and is frozen; the per-frame
    rigid head rotation ``r`` is split evenly, ``neck_pose = head_pose = r / 2``; ``transl`` is the
    bust translation. Gaze is not observable from 68 landmarks (no iris points), so
    ``leye_pose``/``reye_pose`` stay at rest; eyelids move through the expression coefficients
    (SMPL-X's blink directions), helped by the eyelid-opening term below.
    """

    mode: str = "fast"
    """``fast``: landmarks only (the default, real time on a CPU); ``detail``: additionally per-frame
    dynamic offsets on the face region, supervised by user-supplied normal maps."""

    # --- streaming ----------------------------------------------------------------------------
    chunk_size: int = 32
    """Frames solved together in one batched Levenberg–Marquardt call (and the smoother's step)."""

    solver_threads: int = 1
    """Torch threads while solving/smoothing (many small operations: one thread is fastest on a
    shared CPU); 0 leaves torch's setting unchanged."""
    detail_threads: int = 1
    """Torch threads for the detail path's renders (0 = torch's setting; on the shared 2-core CPU
    one thread was several times faster than two)."""

    # --- per-clip identity ----------------------------------------------------------------------
    num_keyframes: int = 5
    """Keyframes used to fit the driving subject's shape once (chosen for diverse poses/expressions)."""
    keyframe_window: int = 48
    """The keyframes are picked among the first this many frames with a face (kept in memory
    until the identity is fitted, so the rest of the clip streams)."""
    fov_y_deg: float = 14.0
    """Vertical field of view of the camera when the identity is fitted here (portrait lens)."""
    identity_fit_iters: int = 30
    """LM iterations of the built-in keyframe shape fit (used when ``expportrait_core.fit`` is absent)."""
    identity_num_betas: int = 50
    """Shape coefficients estimated by the built-in keyframe fit."""
    identity_w_jaw: float = 20.0
    """Built-in keyframe fit: prior on the keyframes' jaw opening (they are chosen with closed mouths)."""
    identity_w_expression: float = 2.0
    """Built-in keyframe fit: prior on the keyframes' expression coefficients."""
    identity_offset_iters: int = 3
    """Built-in keyframe fit: rounds of landmark-driven static offsets after the shape fit (0 = none)."""
    identity_offset_shrink: float = 0.7
    """Fraction of the mean keyframe residual moved into the static offsets per round."""
    identity_offset_radius: float = 0.012
    """Radius (metres) of the Gaussian basis spreading the landmark corrections over the mesh."""
    use_fit_module: bool = False
    """Fit the driving identity with ``expportrait_core.fit.fit_shared_identity`` (True) or with the
    built-in landmark-only keyframe fit (False, the default: on the synthetic benchmark it gives a
    more accurate head orientation, 1.2° vs 2.8°, in about half the time)."""

    # --- landmark data term -------------------------------------------------------------------
    num_expression: int = 50
    """Expression coefficients tracked per frame (the rest stay 0); capped by the proxy's count."""
    landmark_sigma: float = 0.006
    """Expected landmark noise as a fraction of the face size (≈1.5 px for a 250 px face)."""
    robust_scale: float = 3.0
    """Scale of the robust (Cauchy) landmark loss in units of ``landmark_sigma``: larger residuals
    (occlusions, a mislocated contour point) are down-weighted instead of pulling the fit."""
    contour_weight: float = 1.0
    """Factor on the 17 jaw-contour landmarks (their position along the silhouette is ambiguous)."""
    chin_weight: float = 3.0
    """Factor on the lower contour around the chin (iBUG 6–10): the chin drops with the jaw, which
    is what distinguishes a jaw opening from parted lips."""
    profile_falloff_deg: float = 25.0
    """Contour points on the side turned away from the camera fade out over this much head yaw
    (they slide onto the silhouette and are the first to be mis-detected in profile views)."""
    eyelid_weight: float = 2.0
    """Weight of the eyelid-opening rows (upper minus lower lid, vertical): blinks are a few pixels."""
    lip_gap_weight: float = 1.0
    """Weight of the inner-lip-gap rows (upper minus lower inner lip, vertical)."""

    # --- priors -------------------------------------------------------------------------------
    w_expression: float = 0.3
    """Ridge prior on the expression coefficients (per coefficient²)."""
    w_jaw_open: float = 0.5
    """Prior on the jaw opening angle (rad²): weak, so mouth opening is explained by the jaw."""
    w_jaw_side: float = 2000.0
    """Prior on jaw yaw and roll (rad²): a jaw barely moves sideways."""
    jaw_max_open: float = 0.6
    """Jaw opening is constrained to [0, jaw_max_open] radians (no negative opening)."""
    expression_max: float = 4.0
    """Expression coefficients are clamped to ±this (runaway guard)."""

    # --- solver -------------------------------------------------------------------------------
    rigid_iters: int = 3
    """LM iterations on head rotation + translation over the stable points (eye corners, nose)."""
    full_iters: int = 4
    """LM iterations on all per-frame unknowns with the rigid result as the start."""
    lm_damping: float = 1e-3
    """Initial Levenberg–Marquardt damping (relative to the diagonal of JᵀJ)."""
    init_yaws_deg: tuple = (-30.0, 0.0, 30.0)
    """Head yaws tried when (re)initialising after a detection (the best fit wins)."""
    reinit_error: float = 6.0
    """A frame whose RMS landmark residual stays above this (in ``landmark_sigma`` units, and above
    2.5× the clip's typical residual) after the warm-started solve is solved again from the
    ``init_yaws_deg`` hypotheses."""
    lost_error: float = 25.0
    """…and if it is still above this (and 5× the typical residual), the frame is treated as lost
    (bridged, re-detected): the landmarks are not those of a face the head model can take."""

    # --- temporal stability -------------------------------------------------------------------
    smoothing: str = "offline"
    """``offline``: data-aware smoother over a sliding window (non-causal; lag of
    ``chunk_size + lookahead`` frames, memory bounded); ``causal``: previous-frame penalties
    only (zero look-ahead, for live use); ``none``: independent per-frame fits."""
    smoothing_strength: float = 1.0
    """Multiplies every temporal weight below (0 = none)."""
    vel_rotation: float = 900.0
    """Velocity penalty on the head rotation (rad²)."""
    vel_translation: float = 9e4
    """Velocity penalty on the translation (m²)."""
    vel_jaw: float = 250.0
    """Velocity penalty on the jaw pose."""
    vel_expression: float = 5.0
    """Velocity penalty on the expression coefficients."""
    acc_rotation: float = 3e6
    """Acceleration penalty on the head rotation (rad²): strong — rigid pose is where jitter shows,
    and an acceleration penalty removes noise without slowing down smooth turns (no lag)."""
    acc_translation: float = 3e8
    """Acceleration penalty on the translation (m²)."""
    acc_jaw: float = 1.5e5
    """Acceleration penalty on the jaw pose: lighter, a mouth opens within a few frames."""
    acc_expression: float = 3000.0
    """Acceleration penalty on the expression coefficients: light relative to their data term
    for the well-observed directions (blinks, smile), strong for the poorly observed ones."""
    causal_vel_factor: float = 3.0
    """Causal mode: multiplies the velocity weights."""
    causal_acc_factor: float = 0.01
    """Causal mode: multiplies the acceleration weights. Without look-ahead the acceleration term
    is a constant-velocity prediction that overshoots when a motion stops, so it is kept small."""
    lookahead: int = 16
    """Frames after the current chunk included in the offline smoother's window."""
    one_euro: bool = False
    """Apply a causal One-Euro filter to the output parameters (mostly useful with ``causal``)."""
    one_euro_min_cutoff: float = 1.5
    """One-Euro cutoff at rest (Hz)."""
    one_euro_beta: float = 0.5
    """One-Euro speed coefficient."""

    # --- detection and re-cropping ------------------------------------------------------------
    crop_min_cutoff: float = 1.0
    """One-Euro cutoff (Hz) of the crop box that the next frame's landmarks are searched in."""
    crop_beta: float = 2.0
    appearance_change: float = 0.08
    """Re-detect when the mean absolute change of a 32×32 grey thumbnail of the crop between two
    frames exceeds this (0..1): a cut, an occlusion or a frame without the face."""
    verify_every: int = 15
    """Every this many frames, check with the detector (on the crop region only) that the tracked
    box still holds a face; 0 disables."""

    # --- detail path (dynamic offsets from normal maps) ---------------------------------------
    detail_iters: int = 25
    """Adam steps per chunk of frames on the dynamic offsets."""
    detail_lr: float = 1e-3
    """Adam learning rate (of the smoothly parametrized offsets, metres)."""
    detail_smoothing: float = 8.0
    """λ of the "large steps" parametrization Δ = (I + λK)⁻¹u (Nicolet et al. 2021): Adam's steps
    move smooth patches instead of single vertices; 0 optimizes Δ directly."""
    detail_resolution: int = 128
    """Side of the square face crop the normal maps are compared at."""
    detail_batch: int = 8
    """Frames optimised together."""
    w_detail_normal: float = 1.0
    """L1 between rendered and target normals (unit vectors), mean over face pixels."""
    w_detail_magnitude: float = 2e3
    """Magnitude prior (mean ‖Δ‖², metres²) pulling the offsets toward zero."""
    w_detail_laplacian: float = 2e5
    """Uniform-Laplacian smoothness of the offsets on the face region (mean ‖LΔ‖², metres²)."""
    detail_max_offset: float = 0.01
    """Offsets are clamped to this length (metres)."""
    detail_zero_mean: bool = True
    """Make the dynamic offsets zero-mean over the clip; the mean migrates to the driving
    identity's static offsets (paper §2.5)."""

    # --- output -------------------------------------------------------------------------------
    num_probe_vertices: int = 400
    """Face/head vertices projected per frame for the jitter metric."""
    seed: int = 0

    def validate(self) -> "TrackConfig":
        if self.mode not in TRACK_MODES:
            raise ExpPortraitError(f"Tracking mode must be one of {TRACK_MODES}, got {self.mode!r}.")
        if self.smoothing not in SMOOTHING_MODES:
            raise ExpPortraitError(f"Tracking smoothing must be one of {SMOOTHING_MODES}, got {self.smoothing!r}.")
        if self.chunk_size < 1 or self.num_keyframes < 1 or self.keyframe_window < 1:
            raise ExpPortraitError("chunk_size, num_keyframes and keyframe_window must be at least 1.")
        if self.smoothing_strength < 0:
            raise ExpPortraitError(f"smoothing_strength must be >= 0, got {self.smoothing_strength}.")
        return self

    def with_(self, **changes) -> "TrackConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)
