"""The Open Inference Protocol's gRPC messages and service (inference.proto, and the modules `make protos`
generates from it). Only workers/v2_grpc.py imports them: tritonclient defines the same message names, and two
such modules in one process collide in protobuf's descriptor pool."""
