//! RabbitMQ topology: one durable orders queue and one dead-letter queue per
//! sale, both declared identically by gateways and workers.

use crate::SaleRef;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// Replicated Raft queue; survives the loss of a RabbitMQ node.
    Quorum,
    /// Single-node durable queue.
    Classic,
}

impl QueueType {
    /// The name RabbitMQ (`x-queue-type`) and the `--queue-type` flag use.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

pub fn orders_queue(sale: &SaleRef) -> String {
    format!("flashsale.{}.{}.orders", sale.namespace, sale.name)
}

pub fn dead_letter_queue(sale: &SaleRef) -> String {
    format!("flashsale.{}.{}.dead", sale.namespace, sale.name)
}

/// The properties of an order message: persistent, JSON, the order id as
/// message id, and the record's type and version.
pub fn order_properties(order_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(order_id.into())
        .with_type("flashsale.order.v1".into())
}

/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-flashsale-reason";

/// Header naming the queue a dead-lettered message came from.
pub const ORIGINAL_QUEUE_HEADER: &str = "x-flashsale-original-queue";

/// Header in which a quorum queue counts the earlier deliveries of a
/// message that came back unacknowledged (its consumer's channel closed,
/// or it was rejected). RabbitMQ 4 drops a message once this reaches the
/// queue's delivery limit, 20 unless a policy sets another.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// How many times a message was handed out before, as its queue counts it
/// in [`DELIVERY_COUNT_HEADER`]; 0 when it does not (a first delivery, a
/// classic queue).
pub fn delivery_count(props: &BasicProperties) -> u64 {
    let Some(value) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(DELIVERY_COUNT_HEADER))
    else {
        return 0;
    };
    let count = match *value {
        AMQPValue::ShortShortInt(n) => i64::from(n),
        AMQPValue::ShortShortUInt(n) => i64::from(n),
        AMQPValue::ShortInt(n) => i64::from(n),
        AMQPValue::ShortUInt(n) => i64::from(n),
        AMQPValue::LongInt(n) => i64::from(n),
        AMQPValue::LongUInt(n) => i64::from(n),
        AMQPValue::LongLongInt(n) => n,
        _ => 0,
    };
    u64::try_from(count).unwrap_or(0)
}

/// Longest wait for the TCP connection and the AMQP handshake. A broker
/// (or a proxy in front of it) that accepts the connection and then never
/// answers would otherwise hold the caller forever.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects, giving up after [`CONNECT_TIMEOUT`]. An `amqps://` URL checks
/// the server's certificate against the system's roots and the CA
/// certificates of `tls` (`--tls-ca-file`), when there are any, and
/// presents its client certificate, if any.
pub async fn connect(url: &str, name: &str, tls: &crate::tls::Tls) -> lapin::Result<Connection> {
    crate::tls::install_crypto_provider();
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: tls.identity_for(crate::tls::Store::Amqp).map(|id| {
            lapin::tcp::OwnedIdentity::PKCS8 {
                pem: id.cert_pem.clone(),
                key: id.key_pem.clone(),
            }
        }),
        cert_chain: tls.ca.as_ref().map(crate::tls::Ca::pem_text),
    };
    let runtime = lapin::runtime::default_runtime()?;
    let connecting = Connection::connect_with_config(url, props, tls, runtime);
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from RabbitMQ within {CONNECT_TIMEOUT:?}"),
            )
            .into())
        })
}

fn queue_args(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(queue_type.as_str().into()),
    );
    args
}

/// Declares one of a sale's queues (idempotent) and returns its counts.
async fn declare_queue(
    channel: &Channel,
    name: String,
    queue_type: QueueType,
) -> lapin::Result<lapin::Queue> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            queue_args(queue_type),
        )
        .await
}

/// Declares the sale's orders queue and dead-letter queue (idempotent).
pub async fn declare(
    channel: &Channel,
    sale: &SaleRef,
    queue_type: QueueType,
) -> lapin::Result<()> {
    for q in [orders_queue(sale), dead_letter_queue(sale)] {
        declare_queue(channel, q, queue_type).await?;
    }
    Ok(())
}

/// Messages in a sale's two queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepths {
    /// Waiting in the orders queue; not those a worker holds unacknowledged.
    pub ready: u32,
    /// In the dead-letter queue: messages a worker could never store.
    pub dead_letters: u32,
}

/// Declares the sale's queues (idempotent) and returns their depths.
pub async fn queue_depths(
    channel: &Channel,
    sale: &SaleRef,
    queue_type: QueueType,
) -> lapin::Result<QueueDepths> {
    let orders = declare_queue(channel, orders_queue(sale), queue_type).await?;
    let dead = declare_queue(channel, dead_letter_queue(sale), queue_type).await?;
    Ok(QueueDepths {
        ready: orders.message_count(),
        dead_letters: dead.message_count(),
    })
}

/// What [`remove_queues`] did with a deleted sale's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRemoval {
    /// Both queues are gone.
    Removed,
    /// The orders queue is gone; the dead-letter queue still holds this
    /// many messages, which could never be stored, and stays for someone
    /// to read them.
    DeadLettersKept(u32),
    /// The orders queue still has consumers (workers shutting down) or
    /// messages: nothing was removed; try again later.
    InUse { consumers: u32, messages: u32 },
}

/// Removes a sale's queues once nothing uses them: the orders queue only
/// when it has neither messages nor consumers (a consumer's unacknowledged
/// messages would otherwise go with it), the dead-letter queue only when
/// empty. Classic queues have RabbitMQ check both conditions again as it
/// deletes (`if-empty`, `if-unused`); quorum queues do not support those
/// flags, so for them the check just before is the guard. The operator
/// calls this only for a closed, drained sale whose workers are gone, when
/// nothing publishes to either queue any more. Idempotent: a queue already
/// gone is declared (empty) and removed again.
pub async fn remove_queues(
    channel: &Channel,
    sale: &SaleRef,
    queue_type: QueueType,
) -> lapin::Result<QueueRemoval> {
    let guarded = queue_type == QueueType::Classic;
    let delete = |name: String, if_unused: bool| async move {
        let options = QueueDeleteOptions {
            if_unused: if_unused && guarded,
            if_empty: guarded,
            ..QueueDeleteOptions::default()
        };
        channel.queue_delete(name.into(), options).await
    };
    let orders = declare_queue(channel, orders_queue(sale), queue_type).await?;
    if orders.consumer_count() > 0 || orders.message_count() > 0 {
        return Ok(QueueRemoval::InUse {
            consumers: orders.consumer_count(),
            messages: orders.message_count(),
        });
    }
    delete(orders_queue(sale), true).await?;
    let dead = declare_queue(channel, dead_letter_queue(sale), queue_type).await?;
    if dead.message_count() > 0 {
        return Ok(QueueRemoval::DeadLettersKept(dead.message_count()));
    }
    delete(dead_letter_queue(sale), false).await?;
    Ok(QueueRemoval::Removed)
}

/// Publishes `body` to `queue` through the default exchange with the
/// mandatory flag, on a channel in confirm mode, and waits for the broker's
/// answer: `Ack(None)` only when the message was routed and confirmed.
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> lapin::Result<Confirmation> {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await?
        .await
}

/// Longest wait for RabbitMQ to acknowledge a close.
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes `conn`, waiting at most [`CLOSE_TIMEOUT`] for RabbitMQ to answer:
/// a stop or a clean-up never hangs on a broker that does not. Whatever
/// was not acknowledged on it goes back to its queue either way.
pub async fn close_quietly(conn: &Connection, reason: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "closing the RabbitMQ connection"),
        Err(_) => tracing::warn!(
            timeout = ?CLOSE_TIMEOUT,
            "RabbitMQ did not answer the close of a connection; leaving it"
        ),
    }
}

/// What [`redrive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redriven {
    /// Messages moved back to the orders queue.
    pub moved: u32,
    /// Messages still in the dead-letter queue afterwards (beyond the
    /// limit, or dead-lettered again while the move ran).
    pub left: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(
        "RabbitMQ did not confirm a message on {queue} ({outcome}); it stays in the dead-letter queue ({moved} moved before it)"
    )]
    NotConfirmed {
        queue: String,
        outcome: String,
        moved: u32,
    },
}

/// Moves the messages of a sale's dead-letter queue back to its orders
/// queue, for the sale's workers to store once the cause is fixed: a
/// worker that reads a newer message version, a constraint dropped from
/// the ledger. The reason headers are removed; body and other properties
/// stay as they were.
///
/// Moves at most the messages the dead-letter queue held when it started
/// (one that fails again comes back and is not moved twice in one call),
/// and at most `limit`. Each message leaves the dead-letter queue only
/// after RabbitMQ confirmed its copy on the orders queue, so a failure
/// midway leaves it in the dead-letter queue or, at worst, in both: the
/// worker stores an order once, whatever the number of copies.
pub async fn redrive(
    conn: &Connection,
    sale: &SaleRef,
    queue_type: QueueType,
    limit: Option<u32>,
) -> Result<Redriven, RedriveError> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let orders = orders_queue(sale);
    let dead = dead_letter_queue(sale);
    declare_queue(&channel, orders.clone(), queue_type).await?;
    let held = declare_queue(&channel, dead.clone(), queue_type)
        .await?
        .message_count();
    let todo = limit.map_or(held, |l| held.min(l));
    let mut moved = 0;
    while moved < todo {
        let Some(msg) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let d = msg.delivery;
        let mut props = d.properties.clone();
        if let Some(headers) = d.properties.headers() {
            let mut kept = headers.inner().clone();
            kept.remove(REASON_HEADER);
            kept.remove(ORIGINAL_QUEUE_HEADER);
            // The count of the dead-letter queue's own deliveries: back on
            // the orders queue, the message starts afresh.
            kept.remove(DELIVERY_COUNT_HEADER);
            props = props.with_headers(FieldTable::from(kept));
        }
        let confirm = publish_confirmed(&channel, &orders, &d.data, props).await?;
        if !matches!(confirm, Confirmation::Ack(None)) {
            channel
                .basic_nack(
                    d.delivery_tag,
                    BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    },
                )
                .await?;
            return Err(RedriveError::NotConfirmed {
                queue: orders,
                outcome: format!("{confirm:?}"),
                moved,
            });
        }
        channel
            .basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await?;
        moved += 1;
    }
    let left = declare_queue(&channel, dead, queue_type)
        .await?
        .message_count();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "redrive done".into())).await;
    Ok(Redriven { moved, left })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_count(value: Option<AMQPValue>) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("other"), AMQPValue::LongInt(7));
        if let Some(v) = value {
            headers.insert(ShortString::from(DELIVERY_COUNT_HEADER), v);
        }
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn the_delivery_count_is_read_whatever_integer_carries_it() {
        assert_eq!(delivery_count(&BasicProperties::default()), 0);
        assert_eq!(delivery_count(&with_count(None)), 0);
        for (value, count) in [
            (AMQPValue::LongLongInt(15), 15),
            (AMQPValue::LongInt(3), 3),
            (AMQPValue::ShortShortUInt(2), 2),
            (AMQPValue::LongLongInt(-1), 0),
            (AMQPValue::LongString("12".into()), 0),
        ] {
            assert_eq!(
                delivery_count(&with_count(Some(value.clone()))),
                count,
                "{value:?}"
            );
        }
    }
}
