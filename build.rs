//! Generates the etcd v3 API and MetaStore's own messages from `proto/` (real and simulated tonic code),
//! and the proto3 JSON mapping (serde) of etcd's client messages for the grpc-gateway JSON API.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cfg(rocksdb_engine)`: this build has the RocksDB engine (the `rocksdb` feature, outside the
    // simulator, whose disk is madsim's and which never builds RocksDB's C++). One name for the
    // two conditions, so the storage room needs no `cfg(madsim)` of its own.
    println!("cargo::rustc-check-cfg=cfg(rocksdb_engine)");
    if std::env::var_os("CARGO_FEATURE_ROCKSDB").is_some()
        && std::env::var_os("CARGO_CFG_MADSIM").is_none()
    {
        println!("cargo::rustc-cfg=rocksdb_engine");
    }
    let protos = [
        "proto/etcd/mvccpb/kv.proto",
        "proto/etcd/authpb/auth.proto",
        "proto/etcd/leasepb/lease.proto",
        "proto/etcd/etcdserverpb/rpc.proto",
        "proto/etcd/v3lockpb/v3lock.proto",
        "proto/etcd/v3electionpb/v3election.proto",
        "proto/metastore/command.proto",
        "proto/metastore/peer.proto",
        "proto/grpc/health/v1/health.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out_dir.join("descriptors.bin");
    madsim_tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &["proto"])?;
    // The real (not simulated) services and clients again, over what madsim's builder wrote, with
    // the codec that encodes a message into room reserved for all of it (`net::grpc_codec`);
    // madsim's builder cannot name a codec.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::net::grpc_codec::ExactProstCodec")
        .compile_protos(&protos, &["proto"])?;
    // etcd's gateway (grpc-gateway v1, jsonpb with `OrigName: true`) writes the proto field names
    // as declared (`create_revision`, `dbSize`, `ID`), skips unknown fields on input and accepts
    // either name form; int64 as strings, bytes as base64, enums by name.
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .out_dir(&out_dir)
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
