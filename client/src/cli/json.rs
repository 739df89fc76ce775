//! Machine output: JSON objects built by hand from proto messages (prost types have no
//! serde), in the proto's field order.
//!
//! Every value is kept as compact JSON text. Fields that carry JSON text on the wire
//! (`data_json`, `filter_json`, ...) are embedded as JSON values *without* a parse and
//! re-serialise round trip: [`reformat`] only moves whitespace, so numbers such as
//! 9007199254740993 or 12.345678901234567890, key order and string escapes come out
//! exactly as the server sent them. serde_json is used to validate that text and to
//! escape our own strings.

use chrono::{DateTime, Utc};

use super::output::rfc3339;

/// A JSON object under construction; keys stay in insertion order.
#[derive(Debug, Default, Clone)]
pub struct JsonObject {
    fields: Vec<(String, String)>,
}

impl JsonObject {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    fn field(mut self, key: &str, json: String) -> Self {
        self.fields.push((key.to_owned(), json));
        self
    }

    /// A string value.
    pub fn str(self, key: &str, value: &str) -> Self {
        self.field(key, string(value))
    }

    /// An integer value.
    pub fn int(self, key: &str, value: impl Into<i64>) -> Self {
        self.field(key, value.into().to_string())
    }

    /// An unsigned integer value.
    pub fn uint(self, key: &str, value: u64) -> Self {
        self.field(key, value.to_string())
    }

    /// A floating-point value; NaN and infinities become `null`.
    pub fn float(self, key: &str, value: f64) -> Self {
        let json = serde_json::Number::from_f64(value)
            .map_or_else(|| "null".to_owned(), |n| n.to_string());
        self.field(key, json)
    }

    /// A boolean value.
    pub fn bool(self, key: &str, value: bool) -> Self {
        self.field(key, value.to_string())
    }

    /// An integer, or `null` when absent.
    pub fn opt_int(self, key: &str, value: Option<i64>) -> Self {
        self.field(
            key,
            value.map_or_else(|| "null".to_owned(), |v| v.to_string()),
        )
    }

    /// A time as an RFC 3339 string, or `null` when absent.
    pub fn time(self, key: &str, value: Option<DateTime<Utc>>) -> Self {
        self.field(
            key,
            value.map_or_else(|| "null".to_owned(), |at| string(&rfc3339(at))),
        )
    }

    /// JSON text embedded as a value: empty text becomes `null`, and text that is not
    /// valid JSON (which the server never sends) is kept as a string rather than lost.
    pub fn raw(self, key: &str, text: &str) -> Self {
        self.field(key, embed(text))
    }

    /// A nested object.
    pub fn obj(self, key: &str, value: JsonObject) -> Self {
        self.field(key, value.to_line())
    }

    /// An array of objects.
    pub fn list(self, key: &str, values: impl IntoIterator<Item = JsonObject>) -> Self {
        let items: Vec<String> = values.into_iter().map(|value| value.to_line()).collect();
        self.field(key, format!("[{}]", items.join(",")))
    }

    /// A string-to-string map as an object, keys sorted for stable output.
    pub fn map<'a>(
        self,
        key: &str,
        entries: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Self {
        let mut entries: Vec<_> = entries.into_iter().collect();
        entries.sort();
        let object = entries
            .into_iter()
            .fold(JsonObject::new(), |object, (k, v)| object.str(k, v));
        self.obj(key, object)
    }

    /// Compact JSON on one line (a JSON-lines record).
    pub fn to_line(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(key, json)| format!("{}:{json}", string(key)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// Indented JSON for people.
    pub fn to_pretty(&self) -> String {
        reformat(&self.to_line(), true)
    }
}

/// A JSON string literal.
fn string(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

/// Compact JSON for `text`, or `null` / a string literal, see [`JsonObject::raw`].
fn embed(text: &str) -> String {
    if text.trim().is_empty() {
        "null".to_owned()
    } else if serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok() {
        reformat(text, false)
    } else {
        string(text)
    }
}

/// Pretty-prints valid JSON `text` (two-space indent) or, with `pretty` false, strips all
/// insignificant whitespace. Only whitespace outside strings changes: every token is
/// copied as is.
pub fn reformat(text: &str, pretty: bool) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // Set after `{` or `[`: the newline is written only if the container is not empty.
    let mut just_opened = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        let closing = matches!(c, '}' | ']');
        if closing {
            depth = depth.saturating_sub(1);
        }
        if just_opened {
            just_opened = false;
            if pretty && !closing {
                newline(&mut out, depth);
            }
        } else if pretty && closing {
            newline(&mut out, depth);
        }
        out.push(c);
        match c {
            '"' => in_string = true,
            '{' | '[' => {
                depth += 1;
                just_opened = true;
            }
            ',' if pretty => newline(&mut out, depth),
            ':' if pretty => out.push(' '),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_keep_field_order_and_escape_strings() {
        let line = JsonObject::new()
            .int("id", 5)
            .str("name", "a \"quoted\"\nname")
            .bool("duplicate", false)
            .opt_int("exit_code", None)
            .float("rate", f64::NAN)
            .to_line();
        assert_eq!(
            line,
            r#"{"id":5,"name":"a \"quoted\"\nname","duplicate":false,"exit_code":null,"rate":null}"#
        );
    }

    #[test]
    fn embedded_json_keeps_numbers_and_key_order_exactly() {
        let data =
            "{ \"z\": 9007199254740993,\n  \"a\": 12.345678901234567890, \"s\": \"x  y\\\"\" }";
        let line = JsonObject::new()
            .raw("data_json", data)
            .raw("filter_json", "")
            .to_line();
        assert_eq!(
            line,
            r#"{"data_json":{"z":9007199254740993,"a":12.345678901234567890,"s":"x  y\""},"filter_json":null}"#
        );
    }

    #[test]
    fn invalid_embedded_json_is_kept_as_a_string() {
        let line = JsonObject::new().raw("data_json", "{oops").to_line();
        assert_eq!(line, r#"{"data_json":"{oops"}"#);
    }

    #[test]
    fn pretty_output_indents_and_keeps_empty_containers_short() {
        let text = r#"{"a":[],"b":{},"c":[1,{"d":"x,y:{"}],"e":null}"#;
        assert_eq!(
            reformat(text, true),
            "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    1,\n    {\n      \"d\": \"x,y:{\"\n    }\n  ],\n  \"e\": null\n}"
        );
    }

    #[test]
    fn reformat_round_trips_to_the_same_value() {
        let text = r#"{"ips": [ ], "id": 178, "name": "ipre-pre-", "nested": {"k": [true, false, -1.5e10]}}"#;
        let pretty = reformat(text, true);
        let compact = reformat(&pretty, false);
        assert_eq!(reformat(text, false), compact);
        let a: serde_json::Value = serde_json::from_str(text).unwrap();
        let b: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn maps_are_sorted_and_lists_nest() {
        let headers = std::collections::HashMap::from([
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]);
        let line = JsonObject::new()
            .map("headers", &headers)
            .list("items", [JsonObject::new().uint("n", 1), JsonObject::new()])
            .to_line();
        assert_eq!(
            line,
            r#"{"headers":{"a":"1","b":"2"},"items":[{"n":1},{}]}"#
        );
    }
}
