//! Request validation that reports every violation at once, each with a
//! JSON pointer, as one 422 problem.

use crate::problem::{FieldError, Problem, escape_pointer};

/// Longest identifier accepted anywhere (ids, skus, references).
pub const MAX_ID_LEN: usize = 128;

/// Implemented by request bodies with rules beyond their types.
pub trait Validate: Sized {
    /// Records every violation into `v`.
    fn validate(&self, v: &mut Validator);

    /// `Ok(self)` when valid, else the 422 problem listing all violations.
    fn validated(self) -> Result<Self, Problem> {
        let mut validator = Validator::default();
        self.validate(&mut validator);
        validator.finish()?;
        Ok(self)
    }
}

/// Collects violations while walking a request.
#[derive(Debug, Default)]
pub struct Validator {
    path: Vec<String>,
    errors: Vec<FieldError>,
}

impl Validator {
    /// Runs `f` with `token` appended to the current pointer.
    pub fn at<R>(&mut self, token: impl ToString, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push(escape_pointer(&token.to_string()));
        let result = f(self);
        self.path.pop();
        result
    }

    /// Records a violation at `field` under the current pointer.
    pub fn error(&mut self, field: &str, detail: impl Into<String>) {
        let mut pointer = String::new();
        for token in &self.path {
            pointer.push('/');
            pointer.push_str(token);
        }
        if !field.is_empty() {
            pointer.push('/');
            pointer.push_str(&escape_pointer(field));
        }
        self.errors.push(FieldError {
            pointer,
            detail: detail.into(),
        });
    }

    /// Checks an identifier: 1..=128 printable ASCII characters without
    /// spaces or commas (ids travel in paths and comma-separated queries).
    pub fn id(&mut self, field: &str, value: &str) {
        if value.is_empty() || value.len() > MAX_ID_LEN {
            self.error(field, format!("must be 1 to {MAX_ID_LEN} characters"));
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'/')
        {
            self.error(
                field,
                "must be printable ASCII without spaces, commas or slashes",
            );
        }
    }

    /// A comma-separated query value as a list of identifiers (1 to `max`
    /// of them, each checked with [`Validator::id`]); empty when absent.
    pub fn id_list(&mut self, field: &str, value: Option<&str>, max: usize) -> Vec<String> {
        let Some(value) = value else {
            return Vec::new();
        };
        let values: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        self.count(field, values.len(), 1, max);
        for item in &values {
            self.id(field, item);
        }
        values
    }

    /// Checks a free-text length.
    pub fn text(&mut self, field: &str, value: &str, max: usize) {
        if value.chars().count() > max {
            self.error(field, format!("must be at most {max} characters"));
        }
    }

    /// Checks an inclusive integer range.
    pub fn range(&mut self, field: &str, value: i64, min: i64, max: i64) {
        if value < min || value > max {
            self.error(field, format!("must be between {min} and {max}"));
        }
    }

    /// Checks a list length.
    pub fn count(&mut self, field: &str, len: usize, min: usize, max: usize) {
        if len < min || len > max {
            self.error(field, format!("must hold {min} to {max} items, got {len}"));
        }
    }

    /// Whether nothing was recorded so far.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The 422 problem when anything was recorded.
    pub fn finish(self) -> Result<(), Problem> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_follow_the_walk() {
        let mut v = Validator::default();
        v.at("events", |v| {
            v.at(3, |v| v.range("quantity", 0, 1, 10));
        });
        v.id("sku", "has space");
        let problem = v.finish().expect_err("two violations");
        let pointers: Vec<_> = problem
            .errors()
            .iter()
            .map(|e| e.pointer.as_str())
            .collect();
        assert_eq!(pointers, ["/events/3/quantity", "/sku"]);
    }

    #[test]
    fn valid_input_passes() {
        let mut v = Validator::default();
        v.id("sku", "SKU-000001");
        v.range("quantity", 5, 1, 10);
        assert!(v.finish().is_ok());
    }
}
