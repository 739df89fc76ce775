//! Event data acceptance against serde_json: whatever `check_object` accepts, serde_json
//! reads as an object holding no NUL; whatever serde_json reads as an object within the
//! depth limit, `check_object` accepts unless it names a rule of its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioning_server::domain::event_data::{
    check_object, check_object_bytes, parse_object, DataError,
};

fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fuzz_target!(|bytes: &[u8]| {
    let checked = check_object_bytes(bytes, usize::MAX);
    let Ok(text) = std::str::from_utf8(bytes) else {
        assert!(matches!(checked, Err(DataError::NotUtf8 { .. })));
        return;
    };
    let ours = check_object(text, usize::MAX);
    assert_eq!(ours.is_ok(), checked.is_ok());
    if text.contains("$serde_json::private::") {
        // serde_json reads an object keyed by one of its private markers as something
        // else (a number, raw JSON): no agreement to check, but `parse_object` must
        // never hand out such a value as an object.
        if let Ok(value) = parse_object(text) {
            assert!(value.is_object());
        }
        return;
    }
    let theirs = serde_json::from_str::<serde_json::Value>(text);
    match (&ours, &theirs) {
        (Ok(()), Ok(value)) => {
            assert!(value.is_object(), "accepted a non-object: {text:?}");
            assert!(!has_nul(value), "accepted NUL: {text:?}");
        }
        (Ok(()), Err(error)) => panic!("accepted what serde_json refuses ({error}): {text:?}"),
        (Err(DataError::Syntax { .. }), Ok(_)) => panic!("syntax error on valid JSON: {text:?}"),
        (Err(DataError::NotAnObject), Ok(value)) => assert!(!value.is_object()),
        _ => {}
    }
});
