"""Drop-in for the old camelCase ``perforatedai.pb_utils`` (PBU)."""

from __future__ import annotations

from torch import nn

from ..tracker.convert import perforate_model
from . import utils_perforatedai as _u


def initializePB(
    model: nn.Module,
    doingPB: bool = True,
    saveName: str = "PB",
    makingGraphs: bool = True,  # noqa: N802,N803
    maximizingScore: bool = True,
    num_classes: float = 1e10,
    values_per_train_epoch: int = -1,  # noqa: N803
    values_per_val_epoch: int = -1,
    zoomingGraph: bool = True,
) -> nn.Module:  # noqa: N803
    """``perforate_model`` under its old name and argument names."""
    return perforate_model(
        model,
        doing_pai=doingPB,
        save_name=saveName,
        making_graphs=makingGraphs,
        maximizing_score=maximizingScore,
        num_classes=num_classes,
        values_per_train_epoch=values_per_train_epoch,
        values_per_val_epoch=values_per_val_epoch,
        zooming_graph=zoomingGraph,
    )


initializePAI = initializePB  # noqa: N816


def convertNetwork(net: nn.Module, layerName: str = "") -> nn.Module:  # noqa: N802,N803
    return _u.convert_network(net, layerName)


def saveSystem(net: nn.Module, folder: str, name: str):  # noqa: N802
    return _u.save_system(net, folder, name)


def loadSystem(
    net: nn.Module,
    folder: str,
    name: str,
    loadFromRestart: bool = False,  # noqa: N802,N803
    switchCall: bool = False,
) -> nn.Module:  # noqa: N803
    return _u.load_system(net, folder, name, loadFromRestart, switchCall)


def saveNet(net: nn.Module, folder: str, name: str):  # noqa: N802
    return _u.save_net(net, folder, name)


def loadNet(net: nn.Module, folder: str, name: str) -> nn.Module:  # noqa: N802
    return _u.load_net(net, folder, name)


def paiSaveSystem(net: nn.Module, folder: str, name: str) -> None:  # noqa: N802
    return None


pbSaveSystem = paiSaveSystem  # noqa: N816


def deepCopyPAI(net: nn.Module) -> nn.Module:  # noqa: N802
    return _u.deep_copy_pai(net)


deepCopyPB = deepCopyPAI  # noqa: N816


def getPBModules(net: nn.Module, depth: int = 0):  # noqa: N802
    return _u.get_pai_modules(net, depth)


def getTrackedModules(net: nn.Module, depth: int = 0):  # noqa: N802
    return _u.get_tracked_modules(net, depth)


def getPBNetworkParams(net: nn.Module):  # noqa: N802
    return _u.get_pai_network_params(net)


def countParams(net: nn.Module) -> int:  # noqa: N802
    return _u.count_params(net)
