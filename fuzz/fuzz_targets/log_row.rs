//! The recorder's row preparation: whatever a run's fields hold, a repaired row holds
//! only what PostgreSQL stores (no NUL in text, acceptable data in the JSON columns).
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioning_server::dispatch::recorder::{repair, strip, LogRecord};
use provisioning_server::domain::event_data::check_object;
use provisioning_server::domain::{HandlerKind, Phase, RunStatus};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fuzz_target!(|input: &[u8]| {
    // Seven fields separated by 0xff (never part of UTF-8 text).
    let mut parts = input.split(|b| *b == 0xff).map(text);
    let mut field = || parts.next().unwrap_or_default();
    let mut log = LogRecord {
        created_at: chrono::Utc::now(),
        phase: Phase::Before,
        event: field(),
        status: RunStatus::Fail,
        handler_id: 1,
        handler_name: field(),
        kind: HandlerKind::Http,
        error: field(),
        duration_ms: 1,
        attempt: 1,
        data_sent: field(),
        data_returned: Some(field()),
        response: field(),
        http_status: None,
        exit_code: None,
        event_id: 1,
        delivery_id: None,
        emitted_by: Some(field()),
        test: false,
    };
    let check = |log: &LogRecord| {
        for value in [&log.event, &log.handler_name, &log.error, &log.response] {
            assert!(!value.contains('\0'));
        }
        assert!(!log.emitted_by.as_deref().unwrap_or_default().contains('\0'));
        assert!(check_object(&log.data_sent, usize::MAX).is_ok(), "{:?}", log.data_sent);
        if let Some(data) = &log.data_returned {
            assert!(check_object(data, usize::MAX).is_ok(), "{data:?}");
        }
    };
    let mut stripped = log.clone();
    repair(&mut log);
    check(&log);
    strip(&mut stripped, "refused\0");
    check(&stripped);
});
