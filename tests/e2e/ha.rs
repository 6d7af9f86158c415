//! Redis high availability: the harness (`support::ha`) checked on its own,
//! so a failure there reads as a broken setup, not as a Tandem bug. A
//! three-master Redis Cluster spreads the class hash tags over its masters;
//! three Sentinels fail a master over to its replica.

use std::time::{Duration, Instant};

use tandem_shared::Class;

use crate::support::ha::{RedisCluster, SentinelSetup};

/// The slot of each class's hash tag (and of `{models}`), as the cluster
/// computes it (`CLUSTER KEYSLOT`).
const CLASS_SLOTS: [(Class, u16); 4] = [
    (Class::Cpu, 9296),
    (Class::Light, 6713),
    (Class::Heavy, 8060),
    (Class::Parallel, 10041),
];
const MODELS_SLOT: u16 = 3701;

/// The keys node `node` holds in `slot` (`CLUSTER GETKEYSINSLOT` answers
/// for the node's own keys, whoever owns the slot).
async fn keys_in_slot(cluster: &RedisCluster, node: usize, slot: u16) -> Vec<String> {
    let mut conn = cluster.node_conn(node).await;
    redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(1000)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Asserts `key` (of `slot`) is on the node that owns the slot and on no
/// other.
async fn assert_only_on_owner(cluster: &RedisCluster, key: &str, slot: u16) {
    let owner = cluster.owner_of(slot);
    let mut conn = cluster.node_conn(owner).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        exists,
        "{key} is not on node {owner}, the owner of slot {slot}"
    );
    for node in (0..cluster.len()).filter(|n| *n != owner) {
        let keys = keys_in_slot(cluster, node, slot).await;
        assert!(
            keys.is_empty(),
            "node {node} holds keys of slot {slot}, owned by node {owner}: {keys:?}"
        );
    }
}

// ---- The harness alone ----

#[tokio::test]
async fn harness_cluster_spreads_the_class_slots_and_redirects() {
    let cluster = RedisCluster::start();
    let mut a = cluster.node_conn(0).await;
    // The slots the brief promises, computed by Redis itself.
    for (class, slot) in CLASS_SLOTS {
        let computed: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("tandem:{{{class}}}:stream:normal"))
            .query_async(&mut a)
            .await
            .unwrap();
        assert_eq!(computed, slot, "{class}");
    }
    let computed: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("tandem:{models}:index")
        .query_async(&mut a)
        .await
        .unwrap();
    assert_eq!(computed, MODELS_SLOT);
    let owners: Vec<usize> = CLASS_SLOTS
        .iter()
        .map(|(_, slot)| cluster.owner_of(*slot))
        .collect();
    assert_eq!(owners, [2, 0, 1, 2], "cpu, light, heavy, parallel");
    assert_eq!(cluster.owner_of(MODELS_SLOT), 0);

    // Node A takes a key of its slot; node B sends the client to A.
    let key = "tandem:{light}:probe";
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("x")
        .query_async(&mut a)
        .await
        .unwrap();
    let mut b = cluster.node_conn(1).await;
    let moved = redis::cmd("GET")
        .arg(key)
        .query_async::<Option<String>>(&mut b)
        .await
        .expect_err("node B does not serve {light}");
    assert_eq!(moved.code(), Some("MOVED"), "{moved}");
    assert_eq!(
        moved.redirect_node(),
        Some((format!("127.0.0.1:{}", cluster.port(0)).as_str(), 6713)),
        "{moved}"
    );
    assert_only_on_owner(&cluster, key, 6713).await;
    assert!(
        cluster.url().starts_with("redis+cluster://127.0.0.1:")
            && cluster.url().matches(',').count() == 2,
        "{}",
        cluster.url()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_sentinels_fail_over_to_the_replica_and_the_old_master_rejoins() {
    let mut setup = SentinelSetup::start();
    let first = setup.first_master_port;
    assert_eq!(setup.current_master_port().await, first);
    assert_eq!(
        setup.url(),
        format!(
            "redis+sentinel://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/mymaster",
            setup.sentinel(0).port,
            setup.sentinel(1).port,
            setup.sentinel(2).port
        )
    );

    // A write on the master reaches the replica.
    let mut master = setup.master().conn().await;
    let _: () = redis::cmd("SET")
        .arg("before")
        .arg("1")
        .query_async(&mut master)
        .await
        .unwrap();
    let replicas: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query_async(&mut master)
        .await
        .unwrap();
    assert_eq!(replicas, 1);

    let killed = Instant::now();
    setup.kill_master();
    setup.wait_failover(Duration::from_secs(30)).await;
    println!("failover took {:?}", killed.elapsed());
    let replica_port = setup.replica().port;
    assert_eq!(setup.current_master_port().await, replica_port);
    assert_ne!(replica_port, first);

    // The promoted replica has the write and takes new ones.
    let mut promoted = setup.replica().conn().await;
    let before: Option<String> = redis::cmd("GET")
        .arg("before")
        .query_async(&mut promoted)
        .await
        .unwrap();
    assert_eq!(before.as_deref(), Some("1"));
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("2")
        .query_async(&mut promoted)
        .await
        .unwrap();

    let restarted = Instant::now();
    setup
        .restart_old_master_as_replica(Duration::from_secs(60))
        .await;
    println!("the old master rejoined in {:?}", restarted.elapsed());
    let replicas: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query_async(&mut promoted)
        .await
        .unwrap();
    assert_eq!(replicas, 1, "the rejoined node replicates the new master");
}
