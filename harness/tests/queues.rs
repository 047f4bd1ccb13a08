//! Removing a deleted sale's queues (`amqp::remove_queues`, what the
//! operator's finalizer does) against the real RabbitMQ, for both queue
//! types: never while a worker consumes or an order waits, and never the
//! dead letters no one has read.

use flashsale_common::amqp::{self, QueueRemoval, QueueType};
use flashsale_harness::{Env, amqp_url, publish_raw, queue_messages};
use lapin::options::{BasicConsumeOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::FieldTable;

async fn removal_only_when_unused(queue_type: QueueType) -> anyhow::Result<()> {
    let env = Env::new(&format!("queues-{}", queue_type.as_str())).await?;
    let (orders, dead) = (
        amqp::orders_queue(&env.sale),
        amqp::dead_letter_queue(&env.sale),
    );
    let conn = amqp::connect(&amqp_url(), "flashsale-test", &Default::default()).await?;
    let ch = conn.create_channel().await?;
    amqp::declare(&ch, &env.sale, queue_type).await?;
    let remove = || async {
        // A channel of its own: a refused delete closes the channel.
        let c = amqp::connect(&amqp_url(), "flashsale-test-remove", &Default::default()).await?;
        let removal = amqp::remove_queues(&c.create_channel().await?, &env.sale, queue_type).await;
        flashsale_common::amqp::close_quietly(&c, "done").await;
        anyhow::Ok(removal?)
    };

    // A worker consuming: nothing is removed.
    let worker = amqp::connect(&amqp_url(), "flashsale-test-worker", &Default::default()).await?;
    let wch = worker.create_channel().await?;
    let _consumer = wch
        .basic_consume(
            orders.as_str().into(),
            "w".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    assert_eq!(
        remove().await?,
        QueueRemoval::InUse {
            consumers: 1,
            messages: 0
        }
    );
    worker.close(200, "stopped".into()).await?;

    // An order waiting: nothing is removed.
    publish_raw(&ch, &orders, b"{}").await?;
    assert_eq!(
        remove().await?,
        QueueRemoval::InUse {
            consumers: 0,
            messages: 1
        }
    );
    assert_eq!(queue_messages(&orders).await?, Some(1), "the order stays");
    let got = ch
        .basic_get(orders.as_str().into(), BasicGetOptions { no_ack: true })
        .await?;
    assert!(got.is_some(), "the order is taken");

    // A dead letter: the orders queue goes, the dead letter stays.
    publish_raw(&ch, &dead, b"{}").await?;
    assert_eq!(remove().await?, QueueRemoval::DeadLettersKept(1));
    assert_eq!(queue_messages(&orders).await?, None);
    assert_eq!(queue_messages(&dead).await?, Some(1));

    // Once it is read, both go; a second call finds nothing to keep.
    ch.queue_purge(dead.as_str().into(), QueuePurgeOptions::default())
        .await?;
    assert_eq!(remove().await?, QueueRemoval::Removed);
    assert_eq!(remove().await?, QueueRemoval::Removed, "idempotent");
    assert_eq!(queue_messages(&orders).await?, None);
    assert_eq!(queue_messages(&dead).await?, None);
    flashsale_common::amqp::close_quietly(&conn, "done").await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_are_removed_only_when_unused() -> anyhow::Result<()> {
    removal_only_when_unused(QueueType::Quorum).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_are_removed_only_when_unused() -> anyhow::Result<()> {
    removal_only_when_unused(QueueType::Classic).await
}
