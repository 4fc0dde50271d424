"""flashkv.v1's protobuf messages and gRPC stubs, generated from proto/flashkv/v1/*.proto.

The modules (tensor_pb2, attention_pb2, attention_pb2_grpc, kvcache_pb2, kvcache_pb2_grpc) are
written here by client/python/generate_protos.py or by `pip install client/python`; they are not
kept in git (see that script for why).
"""
