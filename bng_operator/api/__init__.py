"""The bng API: pydantic models of every custom resource, the single source of the CRDs."""

from bng_operator.api.bngnode import BNGNode
from bng_operator.api.common import API_VERSION, GROUP, VERSION
from bng_operator.api.ippool import IPPool
from bng_operator.api.natpool import NATPool
from bng_operator.api.qospolicy import QoSPolicy
from bng_operator.api.resource import Resource
from bng_operator.api.subscriber import Subscriber
from bng_operator.api.subscriberclass import SubscriberClass

RESOURCES: tuple[type[Resource], ...] = (
    IPPool, SubscriberClass, QoSPolicy, NATPool, BNGNode, Subscriber,
)
BY_KIND: dict[str, type[Resource]] = {r.info.kind: r for r in RESOURCES}

__all__ = [
    "API_VERSION", "BY_KIND", "GROUP", "RESOURCES", "VERSION",
    "BNGNode", "IPPool", "NATPool", "QoSPolicy", "Resource", "Subscriber", "SubscriberClass",
]
