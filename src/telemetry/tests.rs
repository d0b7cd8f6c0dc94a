//! Tests of the trace export and the spans.

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

fn cfg(enabled: Option<bool>, endpoint: Option<&str>) -> TelemetryConfig {
    TelemetryConfig {
        enabled,
        endpoint: endpoint.map(str::to_string),
        ..Default::default()
    }
}

#[test]
fn off_unless_configured() {
    assert_eq!(resolve(&cfg(None, None), &env(&[])), Ok(None));
    assert_eq!(
        resolve(
            &cfg(Some(false), Some("http://x:4318")),
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://y:4318")])
        ),
        Ok(None)
    );
    for off in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://y:4318"), off]);
        assert_eq!(resolve(&cfg(None, None), &e), Ok(None), "{off:?}");
    }
    // Empty values count as unset.
    assert_eq!(
        resolve(
            &cfg(None, Some(" ")),
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])
        ),
        Ok(None)
    );
}

#[test]
fn endpoint_precedence_and_paths() {
    let ep = |c: TelemetryConfig, e: &[(&str, &str)]| {
        resolve(&c, &env(e)).expect("valid").expect("on").endpoint
    };
    assert_eq!(ep(cfg(Some(true), None), &[]), DEFAULT_ENDPOINT);
    assert_eq!(
        ep(
            cfg(None, None),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]
        ),
        "http://c:4318/v1/traces"
    );
    assert_eq!(
        ep(
            cfg(None, None),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom")
            ]
        ),
        "http://t:1/custom"
    );
    assert_eq!(
        ep(
            cfg(None, Some("http://cfg:4318")),
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom")]
        ),
        "http://cfg:4318/v1/traces"
    );
    assert_eq!(
        ep(
            cfg(None, Some("https://trace.wandb.ai/otel/v1/traces")),
            &[]
        ),
        "https://trace.wandb.ai/otel/v1/traces"
    );
    assert!(resolve(&cfg(None, Some("localhost:4318")), &env(&[])).is_err());
}

#[test]
fn service_name_and_headers() {
    let c = TelemetryConfig {
        enabled: Some(true),
        headers: Some("Authorization=Basic%20YXBpOmtleQ==, project_id=me/proj".into()),
        ..Default::default()
    };
    let s = resolve(&c, &env(&[("OTEL_SERVICE_NAME", "svc")]))
        .expect("valid")
        .expect("on");
    assert_eq!(s.service_name, "svc");
    assert_eq!(
        s.headers,
        vec![
            (
                "Authorization".to_string(),
                "Basic YXBpOmtleQ==".to_string()
            ),
            ("project_id".to_string(), "me/proj".to_string())
        ]
    );
    let s = resolve(&cfg(Some(true), None), &env(&[]))
        .expect("valid")
        .expect("on");
    assert_eq!(s.service_name, "zwarm");
    assert!(parse_headers("novalue").is_err());
    assert!(parse_headers("a=%zz").is_err());
    assert!(parse_headers("bad name=x").is_err());
    // Debug never shows header values.
    let shown = format!("{c:?}");
    assert!(
        shown.contains("Authorization") && !shown.contains("YXBp"),
        "{shown}"
    );
}

#[test]
fn protocol_other_than_http_protobuf_is_a_warning() {
    let s = resolve(
        &cfg(Some(true), None),
        &env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
    )
    .expect("valid")
    .expect("on");
    assert_eq!(s.warnings.len(), 1);
}

#[test]
fn remote_context_parses_w3c_traceparent() {
    let cx = remote_context(
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        Some("vendor=x"),
    )
    .expect("valid");
    let sc = cx.span().span_context().clone();
    assert_eq!(
        sc.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert!(sc.is_remote());
    assert!(remote_context(Some("garbage"), None).is_none());
    assert!(remote_context(None, Some("vendor=x")).is_none());
}

#[test]
fn helpers_are_no_ops_when_off() {
    assert!(!enabled());
    let launch = crate::runner::Launch::default();
    let launch = with_trace_env(launch);
    assert!(launch.env_set.is_empty() && launch.env_remove.is_empty());
    assert!(turn_span("s", 1, || unreachable!("not asked when off")).is_disabled());
    assert!(after_turn_span(&capture()).is_disabled());
    let mut t = TurnTrace::default();
    t.event(&ExecutorEvent::CommandStarted {
        id: "1".into(),
        command: "ls".into(),
    });
    assert!(t.commands.is_empty());
}
