//! packer/matrix.json as people read it: two-space indents, and a container
//! on one line when it holds no object or array of objects and fits. Written
//! by add-spark; the checked-in file is in this form, so a rewrite changes
//! only what was added.

use serde_json::Value;

const WIDTH: usize = 110;

pub fn render(value: &Value) -> String {
    let mut out = String::new();
    write(value, 0, 0, &mut out);
    out.push('\n');
    out
}

/// `column`: where on its line the value starts; `indent`: its line's indent.
fn write(value: &Value, indent: usize, column: usize, out: &mut String) {
    if let Some(inline) = inline(value).filter(|s| column + s.len() <= WIDTH) {
        out.push_str(&inline);
        return;
    }
    let pad = " ".repeat(indent + 2);
    match value {
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad);
                write(item, indent + 2, indent + 2, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&" ".repeat(indent));
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("{\n");
            for (i, (key, item)) in map.iter().enumerate() {
                let key = Value::String(key.clone()).to_string();
                out.push_str(&format!("{pad}{key}: "));
                write(item, indent + 2, indent + 2 + key.len() + 2, out);
                out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
            }
            out.push_str(&" ".repeat(indent));
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// One line, when the value holds no nested object: `[17, 21]`, `{ "a": 1 }`.
fn inline(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => {
            let parts: Option<Vec<String>> =
                items.iter().map(|i| if i.is_object() { None } else { inline(i) }).collect();
            Some(format!("[{}]", parts?.join(", ")))
        }
        Value::Object(map) => {
            let parts: Option<Vec<String>> =
                map.iter()
                    .map(|(k, v)| {
                        if v.is_object() {
                            None
                        } else {
                            Some(format!("{}: {}", Value::String(k.clone()), inline(v)?))
                        }
                    })
                    .collect();
            Some(format!("{{ {} }}", parts?.join(", ")))
        }
        scalar => Some(scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_matrix_is_in_this_form() {
        let text = include_str!("../../packer/matrix.json");
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(render(&value), text, "run the matrix through matrix_text::render");
    }
}
