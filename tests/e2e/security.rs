//! Security: an ACL user limited to the key prefix, TLS, and signed tasks.

use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::{Producer, Task};
use tandem_shared::config::Secret;
use tandem_shared::kind::builtin::Echo;
use tandem_shared::{Config, Status, TaskId, msgpack};

use crate::support::{RedisServer, WorkerProcess};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_acl_user_limited_to_the_prefix_runs_everything() {
    let redis = RedisServer::start();
    let mut admin = redis.conn().await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "tandem",
            "on",
            ">s3cret-pw",
            "resetkeys",
            "~tandem:*",
            "resetchannels",
            "&tandem:*",
            "+@all",
            "-@dangerous",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://tandem:s3cret-pw@127.0.0.1:{}", redis.port);
    let worker = WorkerProcess::start(&redis, &[("TANDEM_REDIS_URL", &url)]).await;
    let producer = Producer::connect(&Config {
        redis_url: url.clone(),
        ..redis.config()
    })
    .await
    .unwrap();

    let id = producer
        .submit(Task::of::<Echo>(&"limited".into()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        producer
            .wait(id, WAIT)
            .await
            .unwrap()
            .result::<String>()
            .unwrap(),
        "limited"
    );
    let queued = producer
        .submit(
            Task::new("echo", &1)
                .unwrap()
                .deadline(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    producer.wait(queued, WAIT).await.unwrap();
    producer
        .store()
        .queue_stats(tandem_shared::Class::ALL)
        .await
        .unwrap();
    producer
        .store()
        .dead_letters(tandem_shared::Class::ALL, 10)
        .await
        .unwrap();
    assert_eq!(
        producer.cancel(TaskId::new()).await.unwrap(),
        tandem_producer::CancelOutcome::NotFound
    );

    // The user really is limited: keys outside the prefix are refused.
    let mut limited = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let refused: redis::RedisResult<()> = limited.set("elsewhere", 1).await;
    let err = refused.unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    assert!(
        !worker.log_text().contains("s3cret-pw"),
        "the password must not be logged"
    );
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let redis = RedisServer::start_tls();
    assert!(redis.url().starts_with("rediss://"));
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::of::<Echo>(&"over tls".into()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        producer
            .wait(id, WAIT)
            .await
            .unwrap()
            .result::<String>()
            .unwrap(),
        "over tls"
    );

    // Without the CA the server's certificate is not trusted.
    let untrusting = Producer::connect(&Config {
        tls_ca_file: String::new(),
        connect_timeout_ms: 500,
        ..redis.config()
    })
    .await;
    assert!(
        untrusting.is_err(),
        "a server certificate from an unknown CA was accepted"
    );
    // And a plain connection to the TLS port gets nowhere.
    let plain = Producer::connect(&Config {
        redis_url: format!("redis://127.0.0.1:{}", redis.port),
        connect_timeout_ms: 500,
        redis_timeout_ms: 500,
        // The plain client's connection breaks as in an outage; retrying
        // is not what this checks.
        reconnect_timeout_ms: 0,
        ..Config::default()
    })
    .await;
    assert!(plain.is_err());
}

#[tokio::test]
async fn a_worker_with_a_key_runs_only_tasks_signed_with_it() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[("TANDEM_SIGNING_KEY", "k1-very-secret")]).await;
    let config_with = |key: &str| Config {
        signing_key: Secret::new(key),
        ..redis.config()
    };

    let signed = Producer::connect(&config_with("k1-very-secret"))
        .await
        .unwrap();
    let id = signed
        .submit(Task::of::<Echo>(&"signed".into()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        signed
            .wait(id, WAIT)
            .await
            .unwrap()
            .result::<String>()
            .unwrap(),
        "signed"
    );

    let other = Producer::connect(&config_with("another-key"))
        .await
        .unwrap();
    for producer in [redis.producer().await, other] {
        let id = producer
            .submit(Task::of::<Echo>(&"forged".into()).unwrap())
            .await
            .unwrap();
        let outcome = producer.wait(id, WAIT).await.unwrap();
        assert_eq!(outcome.status, Status::Failed);
        assert_eq!(outcome.failure().unwrap().code.as_str(), "BAD_SIGNATURE");
        let letter = producer
            .store()
            .dead_letter(outcome.record.dead_letter.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(letter.reason, "BAD_SIGNATURE");
    }

    // A signed entry whose parameters were changed on the way is refused.
    let mut conn = redis.conn().await;
    let id = TaskId::new();
    let reply_to = format!("tandem:{{cpu}}:reply:{}", signed.id());
    let params = msgpack::encode(&"original").unwrap();
    let signer = tandem_shared::signature::Signer::new("k1-very-secret").unwrap();
    let signature = signer.sign(&tandem_shared::signature::Signed {
        id: &id,
        kind: "echo",
        class: tandem_shared::Class::Cpu,
        priority: tandem_shared::Priority::Normal,
        max_attempts: 3,
        reply_to: &reply_to,
        params: &params,
    });
    let tampered = msgpack::encode(&"tampered").unwrap();
    // The record first, as a producer writes it: a worker may claim and
    // commit the entry before the next line runs.
    let _: () = conn
        .hset(format!("tandem:{{cpu}}:task:{id}"), "status", "queued")
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("tandem:{cpu}:stream:normal")
        .arg("*")
        .arg(&[
            "version",
            "2",
            "id",
            &id.to_string(),
            "kind",
            "echo",
            "max_attempts",
            "3",
        ])
        .arg("reply_to")
        .arg(&reply_to)
        .arg("signature")
        .arg(&signature)
        .arg("params")
        .arg(tampered.as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    let outcome = signed.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.failure().unwrap().code.as_str(), "BAD_SIGNATURE");
    assert!(
        !worker.log_text().contains("k1-very-secret"),
        "the key must not be logged"
    );
}
