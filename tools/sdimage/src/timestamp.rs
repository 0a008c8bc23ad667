//! File timestamps for the image: `SOURCE_DATE_EPOCH` when set, so that builds repeat byte for
//! byte, otherwise the current time; in UTC, within FAT's 1980–2107 range.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// A calendar date and time of day, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalendarTime {
    /// Full year, 1980 to 2107.
    pub year: u16,
    /// Month, 1 to 12.
    pub month: u16,
    /// Day of the month, 1 to 31.
    pub day: u16,
    /// Hour, 0 to 23.
    pub hour: u16,
    /// Minute, 0 to 59.
    pub minute: u16,
    /// Second, 0 to 59.
    pub second: u16,
}

fn is_leap_year(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Converts seconds since 1970-01-01 UTC to a calendar time that FAT can store: times before
/// 1980 become 1980-01-01 00:00:00, times after 2107 become 2107-12-31 23:59:58.
pub fn calendar_time(unix_seconds: u64) -> CalendarTime {
    let earliest = CalendarTime { year: 1980, month: 1, day: 1, hour: 0, minute: 0, second: 0 };
    let latest = CalendarTime { year: 2107, month: 12, day: 31, hour: 23, minute: 59, second: 58 };
    let mut days = unix_seconds / 86_400;
    let seconds_of_day = unix_seconds % 86_400;
    let mut year = 1970;
    loop {
        let year_days = if is_leap_year(year) { 366 } else { 365 };
        if days < year_days {
            break;
        }
        days -= year_days;
        year += 1;
        if year > 2107 {
            return latest;
        }
    }
    if year < 1980 {
        return earliest;
    }
    let february = if is_leap_year(year) { 29 } else { 28 };
    let month_days = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1;
    for length in month_days {
        if days < length {
            break;
        }
        days -= length;
        month += 1;
    }
    CalendarTime {
        year: year as u16,
        month,
        day: days as u16 + 1,
        hour: (seconds_of_day / 3600) as u16,
        minute: (seconds_of_day / 60 % 60) as u16,
        second: (seconds_of_day % 60) as u16,
    }
}

/// The time every file of this run is stamped with, read once.
fn build_time() -> CalendarTime {
    static TIME: OnceLock<CalendarTime> = OnceLock::new();
    *TIME.get_or_init(|| {
        let from_environment =
            std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|text| text.trim().parse().ok());
        let now = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |duration| duration.as_secs());
        calendar_time(from_environment.unwrap_or_else(now))
    })
}

/// The `fatfs` time provider that stamps files with [`build_time`].
#[derive(Debug)]
pub struct BuildClock;

/// The one clock, with the `'static` lifetime `fatfs` asks for.
pub static BUILD_CLOCK: BuildClock = BuildClock;

impl fatfs::TimeProvider for BuildClock {
    fn get_current_date(&self) -> fatfs::Date {
        let time = build_time();
        fatfs::Date { year: time.year, month: time.month, day: time.day }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        let time = build_time();
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time { hour: time.hour, min: time.minute, sec: time.second, millis: 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(year: u16, month: u16, day: u16, hour: u16, minute: u16, second: u16) -> CalendarTime {
        CalendarTime { year, month, day, hour, minute, second }
    }

    #[test]
    fn unix_seconds_become_utc_calendar_times() {
        assert_eq!(calendar_time(1_700_000_000), time(2023, 11, 14, 22, 13, 20));
        assert_eq!(calendar_time(951_782_400), time(2000, 2, 29, 0, 0, 0));
        assert_eq!(calendar_time(315_532_800), time(1980, 1, 1, 0, 0, 0));
        assert_eq!(calendar_time(1_735_689_599), time(2024, 12, 31, 23, 59, 59));
    }

    #[test]
    fn times_outside_fat_range_are_clamped() {
        assert_eq!(calendar_time(0), time(1980, 1, 1, 0, 0, 0));
        assert_eq!(calendar_time(u64::MAX), time(2107, 12, 31, 23, 59, 58));
    }
}
