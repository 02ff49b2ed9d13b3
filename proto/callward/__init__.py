"""The callward protobuf package."""
