#include "logging.h"

#include <iostream>

namespace demobert
{

namespace
{

char const* severityPrefix(Severity severity)
{
    switch (severity)
    {
    case Severity::kINTERNAL_ERROR: return "[DemoBERT][F] ";
    case Severity::kERROR: return "[DemoBERT][E] ";
    case Severity::kWARNING: return "[DemoBERT][W] ";
    case Severity::kINFO: return "[DemoBERT][I] ";
    case Severity::kVERBOSE: return "[DemoBERT][V] ";
    }
    return "[DemoBERT][?] ";
}

} // namespace

Logger gLogger;

Logger::Logger(Severity reportableSeverity)
    : mReportableSeverity(reportableSeverity)
{
}

void Logger::log(Severity severity, nvinfer1::AsciiChar const* message) noexcept
{
    // Lower enum values are more severe.
    if (severity > mReportableSeverity)
    {
        return;
    }
    std::lock_guard<std::mutex> lock(mMutex);
    std::cout << severityPrefix(severity) << message << '\n' << std::flush;
}

} // namespace demobert
