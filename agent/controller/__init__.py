"""The in-cluster controller: ModelArtsService CRs → Services, EndpointSlices and CR status, leader-elected."""
