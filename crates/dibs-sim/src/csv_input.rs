//! The reading loop that every CSV input of a simulation shares: traces (`trace.rs`),
//! status-page histories (`incidents.rs`) and price histories (`prices.rs`).
//!
//! Each reader names the columns it needs; a [`Table`] finds them in the header, whatever
//! their order and whatever other columns the file has, and hands each data row's fields
//! to the reader, trimmed, with the row's line number. What can go wrong while doing so is
//! a [`CsvError`], and every message names the file, and the line and column at fault when
//! there is one, so a person can open the file at the right place. Each reader's own error
//! enum wraps it and adds what only that reader can get wrong.
//!
//! Decisions and their cost:
//! * The reader is `flexible`: a row may have more or fewer fields than the header. A row
//!   missing a field that a reader needs is an error naming the column; extra fields are
//!   ignored, as traces often carry columns of their own.
//! * Every table has a limit on its rows, given by the reader, so a file that is far too
//!   long is refused rather than read into memory.

/// A CSV input could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsvError {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{file}: missing column {column:?} (header: {header})")]
    MissingColumn { file: String, column: &'static str, header: String },
    #[error("{file}:{line}: {column} {value:?} is not {expected}")]
    BadValue { file: String, line: u64, column: &'static str, value: String, expected: &'static str },
    #[error("{file}:{line}: {message}")]
    Malformed { file: String, line: u64, message: String },
    #[error("{file}: more than {limit} rows")]
    TooManyRows { file: String, limit: usize },
}

impl CsvError {
    /// The value of `column` on `line` is not what the reader expects (`expected` completes
    /// "is not ...": "a whole number", "an RFC 3339 time").
    pub fn bad_value(
        file: &str,
        line: u64,
        column: &'static str,
        value: &str,
        expected: &'static str,
    ) -> Self {
        Self::BadValue { file: file.to_owned(), line, column, value: value.to_owned(), expected }
    }

    fn from_csv(file: &str, error: &csv::Error) -> Self {
        match error.position() {
            Some(position) => {
                Self::Malformed { file: file.to_owned(), line: position.line(), message: error.to_string() }
            }
            None => Self::Read { file: file.to_owned(), message: error.to_string() },
        }
    }
}

/// A CSV reader over `text` with the `N` named columns located in its header.
pub struct Table<'a, const N: usize> {
    file: &'a str,
    reader: csv::Reader<&'a [u8]>,
    columns: [usize; N],
    names: [&'static str; N],
    max_rows: usize,
}

impl<'a, const N: usize> Table<'a, N> {
    /// Reads the header of `text` (the file `file`) and finds `names` in it; a table of at
    /// most `max_rows` data rows.
    pub fn open(
        file: &'a str,
        text: &'a str,
        names: [&'static str; N],
        max_rows: usize,
    ) -> Result<Self, CsvError> {
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
        let header = reader.headers().map_err(|e| CsvError::from_csv(file, &e))?.clone();
        let mut columns = [0; N];
        for (slot, name) in columns.iter_mut().zip(names) {
            *slot = header.iter().position(|h| h.trim() == name).ok_or_else(|| CsvError::MissingColumn {
                file: file.to_owned(),
                column: name,
                header: header.iter().collect::<Vec<_>>().join(","),
            })?;
        }
        Ok(Self { file, reader, columns, names, max_rows })
    }

    /// Calls `row` with each data row (its line number and the named fields, trimmed, in
    /// `names` order), at most `max_rows` of them; returns how many rows there were.
    pub fn for_each<E: From<CsvError>>(
        &mut self,
        mut row: impl FnMut(u64, [&str; N]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut record = csv::StringRecord::new();
        let mut count = 0;
        while self.reader.read_record(&mut record).map_err(|e| CsvError::from_csv(self.file, &e))? {
            count += 1;
            if count > self.max_rows {
                return Err(CsvError::TooManyRows { file: self.file.to_owned(), limit: self.max_rows }.into());
            }
            let line = record.position().map_or(0, csv::Position::line);
            let mut fields = [""; N];
            for ((field, &index), name) in fields.iter_mut().zip(&self.columns).zip(self.names) {
                *field = record.get(index).map(str::trim).ok_or_else(|| CsvError::Malformed {
                    file: self.file.to_owned(),
                    line,
                    message: format!("column {name:?} is missing from this row"),
                })?;
            }
            row(line, fields)?;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `text` for the columns `b` and `a`, at most two rows: the rows as
    /// "line:b:a", or the error's message.
    fn check(text: &str, expected: &str) {
        let read = || -> Result<Vec<String>, CsvError> {
            let mut rows = Vec::new();
            Table::open("f.csv", text, ["b", "a"], 2)?.for_each(|line, [b, a]| {
                rows.push(format!("{line}:{b}:{a}"));
                Ok::<_, CsvError>(())
            })?;
            Ok(rows)
        };
        let said = read().map_or_else(|e| e.to_string(), |rows| rows.join(" "));
        assert_eq!(said, expected);
    }

    #[test]
    fn columns_are_found_by_name_and_rows_bounded() {
        check("a,x,b\n1,y, 2 \n3,z,4\n", "2:2:1 3:4:3");
        check("a,x,b\n1,y,2\n3,z,4\n5,w,6\n", "f.csv: more than 2 rows");
        check("a,x\n1,y\n", r#"f.csv: missing column "b" (header: a,x)"#);
        check("a,x,b\n1,y\n", r#"f.csv:2: column "b" is missing from this row"#);
    }
}
