"""The descriptor pool of the generated Envoy messages (proto/gen_envoy.py points them here).

Not protobuf's default pool: xds-protos, if a user has it installed for other reasons, registers
the same full names there, possibly from another Envoy version, and one pool cannot hold both.
The wire format and gRPC method names do not depend on the pool.
"""

from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    duration_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor_pool import DescriptorPool

POOL = DescriptorPool()
# The protobuf runtime's well-known types the Envoy files import, as the runtime ships them.
for _module in (descriptor_pb2, any_pb2, duration_pb2, struct_pb2, timestamp_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)
