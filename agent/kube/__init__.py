"""The Kubernetes client layer (client, watch, leader election) and the names of what the agent writes."""

GROUP = "vpc.modelarts.io"
VERSION = "v1alpha1"
KIND = "ModelArtsService"
FIELD_MANAGER = "modelarts-agent"
MANAGED_BY = "modelarts-agent"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SERVICE_ID_LABEL = "vpc.modelarts.io/service-id"
# A CR's spec.loadBalancing, written by the controller, read by sidecars (agent/sources/slices.py).
LB_ANNOTATION = f"{GROUP}/load-balancing"
