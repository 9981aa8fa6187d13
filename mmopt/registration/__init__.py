"""Rigid registration of point clouds: Fast and Robust ICP.

:class:`RegistrationProblem` holds the two clouds (source first: ``target ~= T source``);
:class:`ICP` (:func:`icp`; :func:`icp_many` for many sources against one target) solves it
by robust point-to-point or point-to-plane ICP with the annealed Welsch scale and Anderson
acceleration on the se(3) twist (multi-resolution at scan scale), its grouped options
:class:`ScaleSchedule` (the annealing of the loss scale) and :class:`StageCriteria` (when
intermediate stages end); :class:`ICPRegistration` is the scikit-learn estimator.
:func:`estimate_normals` gives PCA normals; :func:`read_point_cloud` and
:func:`write_point_cloud` handle PLY, XYZ and NPY files.

:class:`SPARE` (:func:`nonrigid_icp`, :class:`NonRigidRegistration`) deforms a source point by
point onto a target (:class:`NonRigidRegistrationProblem`): robust non-rigid registration with
the symmetrized point-to-plane distance and an as-rigid-as-possible regularizer, optionally
started by a coarse stage on a deformation graph (:class:`DeformationGraph`).
"""

from mmopt.registration.deformation_graph import DeformationGraph
from mmopt.registration.estimator import ICPRegistration
from mmopt.registration.icp import ICP, icp
from mmopt.registration.io import read_faces, read_point_cloud, write_point_cloud
from mmopt.registration.kabsch import weighted_kabsch
from mmopt.registration.many import icp_many
from mmopt.registration.nonrigid import (
    SPARE,
    NonRigidRegistration,
    NonRigidRegistrationProblem,
    nonrigid_icp,
)
from mmopt.registration.normals import estimate_normals
from mmopt.registration.options import ScaleSchedule, StageCriteria
from mmopt.registration.problem import RegistrationProblem
from mmopt.registration.se3 import se3_exp, se3_log

__all__ = [
    "DeformationGraph",
    "ICP",
    "ICPRegistration",
    "NonRigidRegistration",
    "NonRigidRegistrationProblem",
    "RegistrationProblem",
    "SPARE",
    "ScaleSchedule",
    "StageCriteria",
    "estimate_normals",
    "icp",
    "icp_many",
    "nonrigid_icp",
    "read_faces",
    "read_point_cloud",
    "se3_exp",
    "se3_log",
    "weighted_kabsch",
    "write_point_cloud",
]
