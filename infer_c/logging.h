// The demo's TensorRT logger: every line goes to stdout as "[DemoBERT][<level>] <message>".
#pragma once

#include <NvInferRuntime.h>

#include <mutex>
#include <sstream>

namespace demobert
{

using Severity = nvinfer1::ILogger::Severity;

class Logger : public nvinfer1::ILogger
{
public:
    explicit Logger(Severity reportableSeverity = Severity::kINFO);

    void log(Severity severity, nvinfer1::AsciiChar const* message) noexcept override;

    Severity reportableSeverity() const noexcept
    {
        return mReportableSeverity;
    }

private:
    Severity mReportableSeverity;
    std::mutex mMutex;
};

// The logger handed to TensorRT and used by the demo's own messages.
extern Logger gLogger;

// Collects one message with operator<< and hands it to gLogger when the full expression ends,
// so a line is never interleaved with output from TensorRT's threads.
class LogLine
{
public:
    explicit LogLine(Severity severity)
        : mSeverity(severity)
    {
    }

    LogLine(LogLine const&) = delete;
    LogLine& operator=(LogLine const&) = delete;

    ~LogLine()
    {
        gLogger.log(mSeverity, mText.str().c_str());
    }

    template <typename T>
    LogLine& operator<<(T const& value)
    {
        mText << value;
        return *this;
    }

private:
    Severity mSeverity;
    std::ostringstream mText;
};

inline LogLine logInfo()
{
    return LogLine(Severity::kINFO);
}

inline LogLine logWarning()
{
    return LogLine(Severity::kWARNING);
}

inline LogLine logError()
{
    return LogLine(Severity::kERROR);
}

} // namespace demobert
