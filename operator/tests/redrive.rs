//! `flashsale-operator redrive`: the real binary against the real RabbitMQ.

use flashsale_common::amqp::{self, ORIGINAL_QUEUE_HEADER, QueueType, REASON_HEADER};
use flashsale_harness::{Env, amqp_url};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use std::process::Command;

fn redrive(env: &Env, extra: &[&str]) -> anyhow::Result<(bool, String)> {
    let sale = env.sale.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
        .args(["redrive", "--sale", &sale])
        .args(extra)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn header(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_dead_letters_back_without_their_reasons() -> anyhow::Result<()> {
    let env = Env::new("redrive").await?;
    let conn = amqp::connect(&amqp_url(), "e2e-redrive", &Default::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    amqp::declare(&ch, &env.sale, QueueType::Quorum).await?;
    // Three messages as a worker dead-letters them: the gateway's
    // properties and headers, plus the reason and the queue they came from.
    for i in 0..3 {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-trace"),
            AMQPValue::LongString(format!("trace-{i}").into()),
        );
        headers.insert(
            ShortString::from(REASON_HEADER),
            AMQPValue::LongString("PostgreSQL refused the order".into()),
        );
        headers.insert(
            ShortString::from(ORIGINAL_QUEUE_HEADER),
            AMQPValue::LongString(amqp::orders_queue(&env.sale).into()),
        );
        let props = amqp::order_properties(&format!("order-{i}")).with_headers(headers);
        ch.basic_publish(
            "".into(),
            amqp::dead_letter_queue(&env.sale).into(),
            BasicPublishOptions::default(),
            format!("body-{i}").as_bytes(),
            props,
        )
        .await?
        .await?;
    }

    let (ok, out) = redrive(&env, &["--limit", "2"])?;
    assert!(
        ok && out.contains("moved 2 message(s)") && out.contains("1 left"),
        "{out}"
    );
    let (ok, out) = redrive(&env, &[])?;
    assert!(
        ok && out.contains("moved 1 message(s)") && out.contains("0 left"),
        "{out}"
    );
    let (ok, out) = redrive(&env, &[])?;
    assert!(ok && out.contains("moved 0 message(s)"), "{out}");
    assert_eq!(
        env.queue_depth(&amqp::dead_letter_queue(&env.sale)).await?,
        0
    );

    let mut bodies = Vec::new();
    while let Some(msg) = ch
        .basic_get(
            amqp::orders_queue(&env.sale).as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await?
    {
        let props = &msg.delivery.properties;
        let body = String::from_utf8_lossy(&msg.delivery.data).into_owned();
        let i = body.trim_start_matches("body-");
        assert_eq!(header(props, REASON_HEADER), None, "{body}");
        assert_eq!(header(props, ORIGINAL_QUEUE_HEADER), None, "{body}");
        assert_eq!(header(props, "x-trace"), Some(format!("trace-{i}")));
        assert_eq!(
            props.message_id().as_ref().map(|m| m.to_string()),
            Some(format!("order-{i}"))
        );
        assert_eq!(props.delivery_mode(), &Some(2));
        bodies.push(body);
    }
    bodies.sort();
    assert_eq!(bodies, ["body-0", "body-1", "body-2"]);

    let (ok, out) = redrive(&env, &["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"])?;
    assert!(
        !ok && out.contains("cannot connect to RabbitMQ") && !out.contains("guest:guest"),
        "{out}"
    );
    flashsale_common::amqp::close_quietly(&conn, "done").await;
    env.cleanup().await
}
