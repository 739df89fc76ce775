//! BEFORE response parsing: whatever bytes a handler answers, the data passed on is
//! acceptable event data, and a pass means the data is unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioning_server::dispatch::before::{data_verdict, Verdict};
use provisioning_server::domain::event_data::check_object;

const SENT: &str = r#"{"id": 15, "name": "Jörg"}"#;

fuzz_target!(|body: &[u8]| {
    match data_verdict(body, SENT, 1 << 20) {
        Verdict::Modify(data) => {
            assert!(check_object(&data, 1 << 20).is_ok(), "passed on {data:?}");
        }
        Verdict::Pass => {
            let trimmed = body.trim_ascii();
            if !trimmed.is_empty() {
                let sent: serde_json::Value = serde_json::from_str(SENT).unwrap();
                let got: serde_json::Value = serde_json::from_slice(trimmed).unwrap();
                assert_eq!(sent, got);
            }
        }
        Verdict::Fail(reason) => assert!(!reason.is_empty()),
        Verdict::Forbid(_) => panic!("a 2xx body never forbids"),
    }
});
