//! Generated protobuf types and gRPC stubs (etcd's API and MetaStore's own messages).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// etcd's `mvccpb` package.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's `authpb` package.
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's `leasepb` package: the lease record of etcd's snapshot files.
pub mod leasepb {
    tonic::include_proto!("leasepb");
}

/// etcd's `etcdserverpb` package: the v3 client API.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's `v3lockpb` package.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's `v3electionpb` package.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// The gRPC health checking protocol, served on the client port as etcd serves it.
pub mod grpc_health {
    tonic::include_proto!("grpc.health.v1");
}

/// MetaStore's internal messages.
pub mod metastore {
    tonic::include_proto!("metastore");
}
